// The tutorial's server, unchanged except: no `package com. company;` line,
// so it compiles standalone, and the port comes from args[0] (default 5000).
import java.io.*;
import java.net.ServerSocket;
import java.net.Socket;

public class Server {
  public static void main(String[] args) throws IOException {
      int port = args.length > 0 ? Integer.parseInt(args[0]) : 5000;
      Socket socket ;
      InputStreamReader inputStreamReader ;
      OutputStreamWriter outputStreamWriter ;
      BufferedReader bufferedReader ;
      BufferedWriter bufferedWriter ;
      ServerSocket serversocket ;
      serversocket = new ServerSocket(port);
      while (true) {
          try {
              socket = serversocket.accept();
              inputStreamReader = new InputStreamReader(socket.getInputStream());
              outputStreamWriter = new OutputStreamWriter(socket.getOutputStream());
              bufferedReader = new BufferedReader(inputStreamReader);
              bufferedWriter = new BufferedWriter(outputStreamWriter);
              while (true){
                  String msgFromClient = bufferedReader.readLine();
                  System.out.println("Client: " + msgFromClient);
                  bufferedWriter.write(" MSG Received");
                  bufferedWriter.newLine();
                  bufferedWriter.flush();
                  if (msgFromClient.equalsIgnoreCase("BYE"))
                  break;
              }
              socket.close();
              inputStreamReader.close();
              outputStreamWriter.close();
              bufferedReader.close();
              bufferedWriter.close();
          } catch (IOException e) {
              e.printStackTrace();
          }
        }
    }
}
